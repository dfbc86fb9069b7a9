"""Datasets made from documents: ``finetui data create``.

Documents (.txt, .md, .pdf, .html, .epub) are read into blocks (:mod:`.documents`), cut
into passages (:mod:`.passages`), and a chat model writes for each passage the question it
answers (:mod:`.writers`: an OpenAI-compatible endpoint or a local model through
:mod:`engine.chat`). Each pair is checked (:mod:`.quality`) and appended to a JSONL file in
the messages format finetui trains on, with a progress sidecar so a killed run continues
where it stopped (:mod:`.store`). Speaker-labelled transcripts become multi-turn
conversations through :mod:`engine.data.transcripts`. :mod:`.run` is the command.

Light package: stdlib only at import time; pypdf and ebooklib (the ``docs`` extra) are
imported when a .pdf or .epub is read, torch only by the local question writer.
"""
