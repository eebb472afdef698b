# flake8: noqa
from .redis_settings import *

FETCH_BY_ID = True
