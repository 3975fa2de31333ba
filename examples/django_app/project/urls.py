"""Django's own HTTP side: a page counting the rows that the WebSocket side serves."""

from __future__ import annotations

from blog.models import Post, User
from django.http import HttpRequest, JsonResponse
from django.urls import path


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "users": User.objects.count(),
            "posts": Post.objects.count(),
            "websocket": request.build_absolute_uri("/ws").replace("http", "ws", 1),
        }
    )


urlpatterns = [path("", index)]
