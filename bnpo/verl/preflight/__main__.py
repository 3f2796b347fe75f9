from .run import main  # python -m bnpo.verl.preflight

raise SystemExit(main())
