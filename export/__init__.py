"""SavedModel export, serving signatures and the retrieval index."""
