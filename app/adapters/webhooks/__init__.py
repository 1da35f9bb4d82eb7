"""app.adapters.webhooks"""
