"""The HTTP ingress: routes, the one HTTP error shape, signed file links."""
