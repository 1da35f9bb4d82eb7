"""The local deployment: `comfyui-saas dev` runs the stages, maintenance and the ingress."""
