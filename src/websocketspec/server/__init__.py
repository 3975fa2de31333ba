"""The server: connections, subscriptions, dispatch and the ASGI application."""
