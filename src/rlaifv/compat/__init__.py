"""Compatibility test bed: tiny models of the major VLM families with their real chat templates.

Not the method and not the sandbox: tiny, randomly initialised models built from config, each
with the chat template its family publishes (``templates/``, provenance in
``templates/PROVENANCE.md``) and a tokenizer of the kind the family uses (byte-level BPE,
SentencePiece-style "▁", or the real SmolLM2 tokenizer). ``zoo.py`` lists them;
``matrix.py`` runs every stage's checks on each and writes ``docs/models.md``.
"""
