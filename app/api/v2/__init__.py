"""Comfy's v2 job API (`/api/v2/jobs`) over our jobs; routes in `routes`, mounted by ingress."""
