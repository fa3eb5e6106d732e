"""lmpipe's library: plain Python + torch, usable without Prefect."""

__version__ = "0.1.0"
