"""The serving front door and its control plane: HAProxy, model servers and the router that follows the registry."""
