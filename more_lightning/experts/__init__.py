"""Retrieval experts and the Weaviate server they search."""
