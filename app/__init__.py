"""comfyui-saas: ComfyUI workflows as a multi-tenant rendering service."""
