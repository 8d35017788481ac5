from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from marketplace.errors import error_response


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/v2/")) or "application/json" in request.headers.get("Accept", "")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return error_response("not_found", "Nothing here.", 404)
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if _wants_json(request):
        return error_response("server_error", "Something went wrong on our side. It has been logged.", 500)
    return render(request, "500.html", status=500)
