"""An admin page for the caches: per alias its servers and their state, its metrics with charts
(drawn on the server as SVG), and a key browser (redis, memcached where the server lists its
keys, the in-process LRU).

Add the app after ``django.contrib.admin``::

    INSTALLED_APPS = [..., "django.contrib.admin", ..., "django_rustcache.contrib.admin"]

and run ``manage.py migrate`` (it makes the app's permissions). The page is under the admin,
at ``/admin/rustcache_admin/cache/``: staff only, and a user needs the permission
``rustcache_admin.view_cache`` to see it and ``rustcache_admin.delete_cache`` to delete keys
(superusers have both). Values are never unpickled there: a value is shown by its size, its
format, and its text only when it is text.
"""
