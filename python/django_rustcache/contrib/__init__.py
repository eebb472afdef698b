"""Optional Django apps that come with django-rustcache."""
