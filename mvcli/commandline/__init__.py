"""commandline"""
