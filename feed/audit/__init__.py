"""The privacy audit: finding plaintext in stored bytes."""
