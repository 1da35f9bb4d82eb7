"""The `comfyui-saas` command line: dev, submit/wait, tenants and maintenance."""
