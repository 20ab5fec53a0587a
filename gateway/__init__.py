"""AgentOps Studio: a recording reverse proxy for the Mistral API."""

__version__ = "0.1.0"
