"""The Modal deployment: app, options, container hooks, ComfyUI process, image manifest."""
