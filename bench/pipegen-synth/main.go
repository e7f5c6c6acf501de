// Command pipegen-synth writes the synthetic monorepo of bench/pipegen.sh: -images image
// directories (every tenth one a base that the next nine build FROM, through the
// <BASE>_IMAGE build argument), -stacks stacks with a production override, and source files
// up to -files files in total. Output depends only on the flags.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
)

func main() {
	dir := flag.String("dir", "", "directory to write the repository into (must not exist or be empty)")
	images := flag.Int("images", 1000, "number of images")
	files := flag.Int("files", 50000, "total number of files")
	stacks := flag.Int("stacks", 20, "number of stacks")
	registry := flag.String("registry", "registry.gitlab.com/bench/mono", "registry path")
	flag.Parse()
	if *dir == "" {
		log.Fatal("-dir is required")
	}
	n := 0
	write := func(p, content string) {
		dst := filepath.Join(*dir, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(dst, []byte(content), 0o644); err != nil {
			log.Fatal(err)
		}
		n++
	}
	write("pipegen.yaml", fmt.Sprintf(`registry: %s
default_branch: main
environments:
  - {name: staging, tier: staging, when: automatic}
  - {name: production, tier: production, when: manual, protected: true}
`, *registry))
	for i := range *images {
		name := fmt.Sprintf("img%04d", i)
		if i%10 == 0 {
			write("images/"+name+"/Dockerfile", "FROM alpine:3.22\nRUN echo "+name+"\n")
		} else {
			base := fmt.Sprintf("IMG%04d", i/10*10)
			write("images/"+name+"/Dockerfile", "ARG "+base+"_IMAGE\nFROM ${"+base+"_IMAGE}\nCOPY src /src\n")
		}
		if i%7 == 0 {
			write("images/"+name+"/image.yaml", "watch: [libs/lib"+fmt.Sprint(i%50)+"]\nbuild_args: {VERSION: \"1\"}\n")
		}
	}
	for i := range *stacks {
		s := fmt.Sprintf("stack%02d", i)
		write("stacks/"+s+"/compose.yaml", fmt.Sprintf("services:\n  a:\n    image: ${REGISTRY}/img%04d:latest\n  db:\n    image: postgres:16\n", i*10+1))
		write("stacks/"+s+"/compose.production.yaml", "services:\n  a:\n    deploy: {replicas: 3}\n")
	}
	// Source files: spread over the images, with a share in libs/ and docs/.
	for i := 0; n < *files; i++ {
		switch {
		case i%10 == 9:
			write(fmt.Sprintf("libs/lib%d/f%05d.go", i%50, i), "package lib\n")
		case i%10 == 8:
			write(fmt.Sprintf("docs/d%05d.md", i), "# doc\n")
		default:
			write(fmt.Sprintf("images/img%04d/src/f%05d.go", i%*images, i), "package main\n")
		}
	}
	fmt.Println(n)
}
