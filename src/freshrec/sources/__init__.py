"""freshrec.sources"""
