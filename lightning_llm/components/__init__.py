"""Built-in components, one module per kind; each registers itself in ``lightning_llm.registry``."""
