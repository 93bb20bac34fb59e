from llm_authz.cli import main

raise SystemExit(main())
