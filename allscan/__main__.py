from allscan.cli import app

app(prog_name="allscan")
