from django.apps import AppConfig


class OrmCacheConfig(AppConfig):
    """Optional: list ``django_rustcache.orm`` in INSTALLED_APPS for the ``{% load rustcache_orm %}``
    template tag and a start-up check of the ORM cache settings."""

    name = "django_rustcache.orm"
    label = "rustcache_orm"
    verbose_name = "django-rustcache ORM query cache"

    def ready(self) -> None:
        from django_rustcache.orm import _engine, config

        config.check()
        _engine.install()
