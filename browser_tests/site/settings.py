"""Settings of the browser tests' site. The servers' LOCATIONs and the database's folder come from
the environment (browser_tests/conftest.py starts them)."""

import os

BASE_DIR = os.environ["RC_SITE_DIR"]
SECRET_KEY = "browser-tests"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INTERNAL_IPS = ["127.0.0.1"]
ROOT_URLCONF = "browser_tests.site.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
STATIC_URL = "/static/"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "debug_toolbar",
    "django_rustcache",
    "django_rustcache.orm",
    "django_rustcache.contrib.admin",
    "browser_tests.site.shop",
]
MIDDLEWARE = [
    "debug_toolbar.middleware.DebugToolbarMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(BASE_DIR, "site.sqlite3")}}
CACHES = {
    "default": {"BACKEND": "django_rustcache.lru.LRUObjectCache", "LOCATION": "browser-tests"},
    "redis": {"BACKEND": "django_rustcache.redis.RedisCache", "LOCATION": os.environ["RC_REDIS"]},
    "memcached": {"BACKEND": "django_rustcache.memcached.MemcachedCache", "LOCATION": os.environ["RC_MEMCACHED"]},
    # Not one of ours: the panel records its calls too; the admin page lists it without metrics.
    "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "browser-tests"},
}
DEBUG_TOOLBAR_PANELS = [
    "debug_toolbar.panels.timer.TimerPanel",
    "debug_toolbar.panels.sql.SQLPanel",
    "django_rustcache.debug_toolbar.CachePanel",
]
DEBUG_TOOLBAR_CONFIG = {"SHOW_COLLAPSED": False, "IS_RUNNING_TESTS": False}
RUSTCACHE_ADMIN_SAMPLE_SECONDS = 1
