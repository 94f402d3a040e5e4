from swarmd.entry import main

raise SystemExit(main())
