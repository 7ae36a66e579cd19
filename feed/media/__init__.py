"""Media attachments: sealed files in a store (``feed.media.store``)."""
