from django.apps import AppConfig


class RustCacheConfig(AppConfig):
    """Optional: list ``django_rustcache`` in INSTALLED_APPS to have its checks run by ``manage.py check``
    even before a cache is first used."""

    name = "django_rustcache"
    verbose_name = "django-rustcache"

    def ready(self) -> None:
        from django_rustcache import checks  # noqa: F401  (registers the checks)
