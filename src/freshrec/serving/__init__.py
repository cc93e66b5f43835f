"""freshrec.serving"""
