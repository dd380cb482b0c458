"""tlmic's command line (installed as ``tlmic_cli``; console script ``tlmic``)."""
