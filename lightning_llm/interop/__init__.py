"""Interoperability with other tools: Hugging Face transformers export and import (``interop.hf``).

Nothing is imported here: ``lightning_llm.interop.hf`` pulls in the model, and transformers itself is
imported only by the functions that need it (``pip install 'lightning-llm[hf]'``).
"""
