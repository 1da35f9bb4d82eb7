"""app.deploy.local"""
