"""One blueprint per endpoint; `BLUEPRINTS` lists them for the factory."""
