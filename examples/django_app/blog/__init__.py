"""The quickstart's two models as a Django app."""
