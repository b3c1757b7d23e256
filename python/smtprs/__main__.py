from smtprs.cli import main

raise SystemExit(main())
