"""Applications over the model: embeddings, similarity search, evaluation, Hub publishing and the Space.

- :mod:`clay_hf.apps.embeddings`: embeddings to tensors, datasets and GeoParquet;
- :mod:`clay_hf.apps.search`: cosine search, refinement, FAISS;
- :mod:`clay_hf.apps.evaluation`: the evaluation protocol (scikit-learn probe and k-NN, segmentation through
  ``finetune``); :mod:`clay_hf.apps.figures`: its confusion-matrix PNGs;
- :mod:`clay_hf.apps.hub`: publishing models, datasets and Spaces (upload plans and pushes);
- :mod:`clay_hf.apps.model_card`: the model card, rendered from ``templates/model_card.md`` (package data);
- :mod:`clay_hf.apps.space`: the Gradio Space's logic (``spaces/app.py`` is its shell).
"""
