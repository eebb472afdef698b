# flake8: noqa
from .settings import *

FETCH_BY_ID = True
