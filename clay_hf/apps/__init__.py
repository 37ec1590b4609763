"""Applications over the model: embeddings, similarity search, evaluation, Hub publishing and the Space.

- :mod:`clay_hf.apps.embeddings`: embeddings to tensors, datasets and GeoParquet;
- :mod:`clay_hf.apps.search`: cosine search, refinement, FAISS;
- :mod:`clay_hf.apps.evaluation`: labelled sample sets, probes, metrics;
- :mod:`clay_hf.apps.hub`: publishing models, datasets and Spaces (model card template in ``templates/``);
- :mod:`clay_hf.apps.space`: the Gradio Space's logic (``spaces/app.py`` is its shell).
"""
