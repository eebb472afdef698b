from django.apps import AppConfig


class RustCacheAdminConfig(AppConfig):
    name = "django_rustcache.contrib.admin"
    label = "rustcache_admin"
    verbose_name = "Caches"
    default_auto_field = "django.db.models.AutoField"
