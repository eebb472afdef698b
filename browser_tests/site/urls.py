from debug_toolbar.toolbar import debug_toolbar_urls
from django.contrib import admin
from django.urls import path

from browser_tests.site import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("calls/", views.calls),
    path("async-calls/", views.async_calls),
    path("tagged/", views.tagged),
    path("books/", views.books),
    *debug_toolbar_urls(),
]
