from swarmd.cli import main

raise SystemExit(main())
