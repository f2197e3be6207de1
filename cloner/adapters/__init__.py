"""Adapters: the only code that talks to the outside world; no library error leaves them."""
