"""The quickstart's users and posts served through Tortoise ORM."""
