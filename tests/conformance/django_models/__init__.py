"""A Django app holding the conformance suite's models (users, posts, things)."""
