"""A small Django site for the browser tests: the debug toolbar with our panel, the admin with
the caches' page, an LRU, a redis and a memcached cache, and a model read through the ORM cache."""
