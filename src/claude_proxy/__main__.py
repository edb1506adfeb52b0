from claude_proxy.cli.main import main

main()
