"""From a trained policy to its use: GGUF export, the model card, a terminal chat.

- :mod:`~groupwise.export.formats`: ``GGUF_TYPES``, the registry of export types
  (``training.export_gguf``, ``groupwise export --type``).
- :mod:`~groupwise.export.target`: what a run directory, a checkpoint or a model directory
  holds, and the model it loads as (LoRA merged).
- :mod:`~groupwise.export.gguf`: ``groupwise export``: GGUF files of every asked type, the
  adapter of a LoRA run, an Ollama ``Modelfile`` beside each.
- :mod:`~groupwise.export.card`: the model card (``final/README.md``).
- :mod:`~groupwise.export.chat`: ``groupwise chat``.
"""
