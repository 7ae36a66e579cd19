from feed.cli import main

raise SystemExit(main())
