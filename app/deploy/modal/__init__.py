"""app.deploy.modal"""
