"""The test site as an ASGI application (served by uvicorn in the tests), its static files (the
toolbar's) served by Django's handler as runserver does."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "browser_tests.site.settings")

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

application = ASGIStaticFilesHandler(get_asgi_application())
